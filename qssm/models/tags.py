"""Role tags: the float model names its quantizable tensors with the roles recipes use.

``tag(module, weight="encoder.weight")`` names the roles of a module's tensors (parameters, or
quantities it computes: Ā, the state); a :class:`Tap` marks an activation point, the identity in
the float model.  The roles sit on the module, not on the tensors: ``copy.deepcopy`` and pickling
drop attributes set on a parameter."""

from torch import nn


def tag(module: nn.Module, **roles: str) -> nn.Module:
    module.roles = {**getattr(module, "roles", {}), **roles}
    return module


class Tap(nn.Identity):
    """An activation (…, channels) with channels last, of ``ndim`` axes (batch first)."""

    def __init__(self, role: str, channels: int, ndim: int = 3):
        super().__init__()
        self.role, self.channels, self.ndim = role, channels, ndim

    def extra_repr(self) -> str:
        return f"{self.role}, channels={self.channels}"


def taps(channels: int, *names: str, role: str = "act.output") -> nn.ModuleDict:
    """One :class:`Tap` per name, all of one role on (B, L, channels)."""
    return nn.ModuleDict({name: Tap(role, channels) for name in names})
