"""Quantize a float model as a recipe's ``quant`` section asks: swap each float layer for its
quantized layer (built from it), then attach a quantizer to every chosen site.

Sites are the quantized layers' ``sites()`` and the float model's activation taps (a block's
``taps``: each :class:`~qssm.models.tags.Tap` a quantized site replaces by its quantizer)."""

from torch import nn

from ..models.mgrade import DelayConv
from ..models.mingru import MinGRU
from ..models.s4d import S4D
from ..models.tags import Tap
from .layers import QuantDelayConv, Quantized, QuantLinear, act_site, make_quantizer
from .mingru import QuantMinGRU
from .quantizers import Site
from .roles import resolve
from .s4d import QuantS4D

LAYERS = {nn.Linear: QuantLinear, S4D: QuantS4D, MinGRU: QuantMinGRU, DelayConv: QuantDelayConv}


def swap(module: nn.Module, quant) -> nn.Module:
    """``module`` with every float layer of :data:`LAYERS` in it replaced by its quantized one."""
    layer = LAYERS.get(type(module))
    module = module if layer is None else layer(module, quant)
    for name, child in list(module.named_children()):
        setattr(module, name, swap(child, quant))
    return module


def model_sites(model: nn.Module) -> list[tuple[str, str, Site]]:
    """(module name, site name, Site) for every quantizable tensor of a swapped model."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, Quantized):
            out += [(name, site, s) for site, s in module.sites().items()]
        taps = module._modules.get("taps")
        for site, tap in (taps or {}).items():
            out.append((name, site, act_site(tap.role, tap.channels, tap.ndim)))
    return out


def wrap(model: nn.Module, quant) -> tuple[nn.Module, dict[str, dict]]:
    """(the quantized model, the resolved spec per site: ``module:site`` → spec).  The float
    model's modules are swapped in place (its parameters become the quantized layers').

    Raises ValueError (naming the recipe key) for targets matching nothing and for settings the
    model cannot take."""
    if quant.fold_b and not any(isinstance(m, S4D) for m in model.modules()):
        raise ValueError("quant.fold_b folds an S4D layer's B̄ into C; this model has none: drop it")
    model = swap(model, quant)
    sites = model_sites(model)
    specs = resolve(quant, [(name, s.role) for name, _, s in sites])
    modules = dict(model.named_modules())
    table = {}
    for name, site_name, site in sites:
        spec = specs[(name, site.role)]
        if spec is None:
            continue
        module = modules[name]
        if len(site.shape) == 1:  # biases, D, dt: a scale per element
            spec = spec.replace(granularity="per_tensor")  # would not quantize at all
        if isinstance(module, Quantized):
            spec = module.attach(site_name, site, spec)
        else:
            module.taps[site_name] = make_quantizer(site, spec)
        table[f"{name}:{site_name}"] = {"role": site.role, **spec.as_dict()}
    return model, table


def quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """``module:site`` → quantizer, for every quantized site."""
    out = {}
    for name, module in model.named_modules():
        owned = module.qz if isinstance(module, Quantized) else module._modules.get("taps")
        for site_name, q in (owned or {}).items():
            if not isinstance(q, Tap):  # a quantizer, not a float tap
                out[f"{name}:{site_name}"] = q
    return out
