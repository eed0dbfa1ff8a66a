"""Attach a quantizer to every site of a model, as a recipe's ``quant`` section asks."""

import math

from torch import nn

from ..models.mgrade import DelayConv
from ..models.quantizable import Quantizable
from ..models.s4d import S4D
from .quantizers import PolarQuantizer, Site, SiteQuantizer
from .roles import ResolvedSpec, resolve


def model_sites(model: nn.Module) -> list[tuple[str, str, object]]:
    """(module name, site name, Site) for every quantizable tensor of ``model``."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, Quantizable):
            out += [(name, site, s) for site, s in module.sites().items()]
        if isinstance(module, DelayConv):
            out.append((name, "delay", None))
    return out


def _role(site_name: str, site) -> str:
    return "conv.delay" if site is None else site.role


def wrap(model: nn.Module, quant) -> dict[str, dict]:
    """Quantize ``model`` in place; returns the resolved spec per site (``module:site`` → spec).

    Raises ValueError (naming the recipe key) for targets matching nothing and for settings the
    model cannot take."""
    ssms = [m for m in model.modules() if isinstance(m, S4D)]
    if quant.fold_b and not ssms:
        raise ValueError("quant.fold_b folds an S4D layer's B̄ into C; this model has none: drop it")
    for m in ssms:
        if quant.parameterization != "continuous":
            m.make_discrete(polar=quant.parameterization == "discrete_polar")
        if quant.fold_b:
            m.fold_b()
    sites = model_sites(model)
    specs = resolve(quant, [(name, _role(site_name, s)) for name, site_name, s in sites])
    modules = dict(model.named_modules())
    table = {}
    for name, site_name, site in sites:
        spec = specs[(name, _role(site_name, site))]
        if spec is None:
            continue
        module = modules[name]
        if site is not None and len(site.shape) == 1:  # biases, D, dt: a scale per element
            spec = spec.replace(granularity="per_tensor")  # would not quantize at all
        if site is None:  # conv.delay: learned delays become integer taps of a delay line
            module.integer_delays = True
            bits = math.ceil(math.log2(module.max_delay))
            spec = spec.replace(bit_width=bits, levels=module.max_delay, narrow=False, signed=False)
        table[f"{name}:{site_name}"] = {"role": _role(site_name, site), **spec.as_dict()}
        if site is None:
            continue
        if "qz" not in module._modules:
            module.qz = nn.ModuleDict()
        module.qz[site_name] = make_quantizer(module, site_name, site, spec)
    return table


def make_quantizer(module: nn.Module, site_name: str, site, spec: ResolvedSpec) -> nn.Module:
    if spec.granularity == "per_element":
        if site.role != "ssm.state":
            raise ValueError(
                f"quant: granularity per_element is for ssm.state only ({site.role} has it); "
                "use per_channel"
            )
        site = module.element_site()
    polar_ok = isinstance(module, S4D) and (
        site_name == "A" or not module.real and site_name in "BC"
    )
    if polar_ok and spec.complex == "polar":
        flat = site if module.real else Site(site.role, site.shape[:-1], site.axis)  # no re/im axis
        return PolarQuantizer(spec, flat, unit_disk=site_name == "A")
    if site.role == "ssm.A" and not spec.symmetric:
        raise ValueError(
            "quant: ssm.A needs symmetric: true (the stability projection rounds toward zero), "
            "or complex: polar"
        )
    return SiteQuantizer(spec, site, signed=spec.signed)


def quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """``module:site`` → quantizer, for every quantized site."""
    out = {}
    for name, module in model.named_modules():
        qz = module._modules.get("qz") if isinstance(module, Quantizable) else None
        for site_name, q in (qz or {}).items():
            out[f"{name}:{site_name}"] = q
    return out
