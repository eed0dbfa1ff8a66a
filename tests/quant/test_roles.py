import pytest
import torch
from brevitas.graph.calibrate import calibration_mode

from qssm.models.backbone import Classifier
from qssm.quant.footprint import footprint
from qssm.quant.wrap import wrap
from qssm.recipe import QuantConfig, RecipeError, parse_recipe

S4D = dict(
    family="s4d",
    d_model=4,
    n_layers=2,
    pool="mean",
    d_state=6,
    init="lin",
    dt_min=1e-3,
    dt_max=1e-1,
)


def table_for(quant: dict, model=S4D):
    return wrap(Classifier(model, 1, 3), QuantConfig.model_validate(quant))[1]


def test_default_then_targets_in_order_and_module_patterns():
    t = table_for(
        {
            "default": {"bits": 4},
            "targets": [
                {"roles": ["ssm.A", "ssm.state"], "bits": 8},
                {"roles": ["ssm.state"], "modules": r"re:blocks\.1\..*", "bits": 6},
                {"roles": ["linear.weight"], "levels": 3},
            ],
        }
    )
    assert t["blocks.0.ssm:A"]["bit_width"] == 8 and t["blocks.1.ssm:A"]["bit_width"] == 8
    assert t["blocks.0.ssm:state"]["bit_width"] == 8
    assert t["blocks.1.ssm:state"]["bit_width"] == 6  # the later, narrower target wins
    assert t["blocks.0.ssm:B"]["bit_width"] == 4
    assert t["blocks.0.linear:weight"]["levels"] == 3 and t["blocks.0.linear:weight"]["narrow"]
    assert "blocks.0.ssm:dt" not in t  # dt is quantized only when a target names it
    assert t["blocks.0.ssm:state"]["signed"] and t["blocks.0.ssm:state"]["role"] == "ssm.state"


def test_gate_is_unsigned_by_default():
    t = table_for(
        {"default": {"bits": 6}},
        dict(family="mingru", d_model=4, n_layers=1, pool="mean", mlp_ratio=2),
    )
    assert not t["blocks.0.gru:gate"]["signed"] and t["blocks.0.gru:cand"]["signed"]


@pytest.mark.parametrize(
    "targets, message",
    [
        (
            [{"roles": ["gru.gate"], "bits": 4}],
            r"quant.targets\[0\]: roles \['gru.gate'\] match nothing",
        ),
        (
            [{"roles": ["ssm.A"], "modules": r"re:blocks\.7\..*", "bits": 4}],
            r"in modules matching 're:blocks\\\\.7\\\\..\*' match nothing",
        ),
    ],
)
def test_targets_matching_nothing_are_errors(targets, message):
    with pytest.raises(ValueError, match=message):
        table_for({"targets": targets})


def test_settings_the_model_cannot_take_are_errors():
    with pytest.raises(ValueError, match=r"per_element is for ssm.state only \(ssm.C has it\)"):
        table_for({"targets": [{"roles": ["ssm.C"], "granularity": "per_element"}]})
    with pytest.raises(ValueError, match=r"quant.fold_b folds ssm.B into ssm.C"):
        table_for({"fold_b": True, "targets": [{"roles": ["ssm.B"], "bits": 4}]})
    mingru = dict(family="mingru", d_model=4, n_layers=1, pool="mean", mlp_ratio=2)
    with pytest.raises(ValueError, match=r"quant.fold_b .* this model has none"):
        table_for({"fold_b": True}, mingru)


def test_folded_b_is_not_stored():
    model = Classifier(S4D, 1, 3)
    model, t = wrap(model, QuantConfig.model_validate({"fold_b": True}))
    fp = footprint(model, t, 0)
    assert "ssm.B" not in fp["per_role"] and "ssm.C" in fp["per_role"]


@pytest.mark.parametrize(
    "quant, message",
    [
        (
            {"targets": [{"roles": ["ssm.Q"], "bits": 4}]},
            r"quant.targets.0.roles: .*unknown role 'ssm.Q'",
        ),
        (
            {"default": {"bits": 0}},
            r"quant.default.bits: Input should be greater than or equal to 1",
        ),
        (
            {"default": {"bits": 33}},
            r"quant.default.bits: Input should be less than or equal to 32",
        ),
        (
            {"default": {"levels": 1}},
            r"quant.default.levels: Input should be greater than or equal to 2",
        ),
        ({"default": {"levels": 5}}, r"levels=5 is not an integer grid"),
        ({"default": {"bits": 4, "levels": 3}}, r"give either bits or levels"),
        (
            {"targets": [{"roles": ["ssm.A"], "symmetric": False, "signed": True}]},
            r"asymmetric quantizer is unsigned",
        ),
        ({"default": {"bits": 1, "signed": True}}, r"1-bit grids are unsigned"),
        (
            {"default": {"observer": "max"}},
            r"quant.default.observer: Input should be 'minmax', 'percentile' or 'mse'",
        ),
        ({"targets": [{"roles": ["ssm.A"], "modules": "re:("}]}, r"bad module pattern"),
        ({"parameterization": "discrete"}, r"quant.parameterization: Input should be 'continuous'"),
    ],
)
def test_recipe_errors_name_the_key(quant, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe({"name": "t", "model": {"family": "s4d"}, "quant": quant}, "r.yaml")


def test_footprint_hand_computed():
    """H=4, n=3 complex modes, 1 layer: Ā, state at 8 bits, everything else at 4."""
    model = Classifier({**S4D, "n_layers": 1}, 1, 3)
    float_params = sum(p.numel() for p in model.parameters())
    model, t = wrap(
        model,
        QuantConfig.model_validate(
            {"default": {"bits": 4}, "targets": [{"roles": ["ssm.A", "ssm.state"], "bits": 8}]}
        ),
    )
    model.train()
    with calibration_mode(model):
        model(torch.randn(2, 5, 1), "recurrent")
    fp = footprint(model, t, float_params)
    H, n = 4, 3
    params = (
        4 * (1 * H + H)  # encoder weight + bias
        + 8 * (H * n * 2)  # Ā as real/imag pairs
        + 4 * (2 * H * n * 2)  # B̄, C
        + 4 * H  # D
        + 4 * (H * 2 * H + 2 * H)  # GLU linear
        + 4 * (H * 3 + 3)  # decoder
        + 32 * 17  # a float32 scale per quantized site (per tensor), 17 sites
    )
    assert fp["param_bits"] == params
    assert fp["state_bits"] == 8 * H * n * 2
    assert fp["buffer_bits"] == 0
    assert fp["float32_bits"] == 32 * (float_params + H * n * 2)
    assert fp["reduction"] == pytest.approx(fp["float32_bits"] / (params + 8 * H * n * 2))
    assert fp["per_role"]["ssm.A"] == {
        "elements": H * n * 2,
        "bits_stored": 8 * H * n * 2,
        "bits": [8],
        "float32_bits": 32 * H * n * 2,
    }
    # a float32 deployment stores Ā, B̄, C, D, the linears and the state; as trained it also
    # keeps dt (H), while continuous A (log_A_real, A_imag) and B count as many as Ā and B̄
    deploy = 32 * (2 * H + H * n * 2 + 2 * H * n * 2 + H + 2 * H * H + 2 * H + 3 * H + 3)
    assert fp["float32_deploy_bits"] == deploy + 32 * H * n * 2
    assert fp["float32_bits"] - fp["float32_deploy_bits"] == 32 * H
    assert fp["reduction_deploy"] == pytest.approx(fp["float32_deploy_bits"] / fp["total_bits"])
    assert fp["per_role"]["quantizer scales"]["float32_bits"] == 0  # float32 has none


def test_footprint_counts_per_element_state_scales_at_their_dtype():
    """One state scale per state element (H·n, shared by real and imaginary part) is stored
    information: B̄ / s and C · s are no longer b-bit codes.  Scales count at scale_dtype."""
    H, n = 4, 3

    def scale_bits(quant: dict) -> int:
        model = Classifier({**S4D, "n_layers": 1}, 1, 3)
        model, t = wrap(model, QuantConfig.model_validate(quant))
        fp = footprint(model, t, sum(p.numel() for p in model.parameters()))
        return fp["per_role"]["quantizer scales"]["bits_stored"]

    per_tensor = scale_bits({"default": {"bits": 8}})
    for granularity, scales in (("per_element", H * n), ("per_channel", H)):
        state = {"roles": ["ssm.state"], "granularity": granularity}
        bits = scale_bits({"default": {"bits": 8}, "targets": [state]})
        assert bits - per_tensor == 32 * (scales - 1)
    half = scale_bits({"default": {"bits": 8, "scale_dtype": "float16"}})
    assert half == per_tensor // 2
    fp8_state = scale_bits(
        {
            "default": {"bits": 8},
            "targets": [{"roles": ["ssm.state"], "scale_dtype": "float8_e5m2"}],
        }
    )
    assert fp8_state == per_tensor - 24
    po2 = {"roles": ["ssm.state"], "granularity": "per_element", "scale_dtype": "po2_3bit"}
    po2_state = scale_bits({"default": {"bits": 8}, "targets": [po2]})
    assert po2_state == per_tensor - 32 + H * n * 3 + 8  # exponents and their offset
    po2_tensor = scale_bits({"default": {"bits": 8, "scale_dtype": "po2_3bit"}})
    assert po2_tensor == per_tensor // 4  # each per-tensor scale: its 8-bit offset alone


def test_mgrade_delays_become_integer_taps_and_buffer_is_counted():
    cfg = dict(
        family="mgrade",
        d_model=4,
        n_layers=1,
        pool="mean",
        max_delay=16,
        n_taps=3,
        sigma=0.5,
        mlp_ratio=2,
    )
    model = Classifier(cfg, 1, 3)
    with torch.no_grad():
        model.blocks[0].conv.delay.copy_(torch.tensor([[0.2, 4.6, 9.4]] * 4))
    model, t = wrap(model, QuantConfig.model_validate({"default": {"bits": 8}}))
    conv = model.blocks[0].conv
    assert conv.integer_delays and conv.taps()[0].tolist() == [0, 5, 9]
    k = conv.kernel()
    assert (k != 0).sum(-1).max() <= 3 and k[:, 10:].abs().sum() == 0
    fp = footprint(model, t, sum(p.numel() for p in model.parameters()))
    assert fp["buffer_bits"] == 4 * 10 * 8  # H × (largest delay + 1) × 8-bit inputs
    assert fp["per_role"]["conv.delay"]["bits"] == [4]  # log2(16)


def test_hardware_mgrade_delay_lines_hold_encoder_codes_then_comparator_bits():
    cfg = dict(
        family="mgrade_hw",
        d_model=4,
        n_layers=2,
        pool="mean",
        max_delay=16,
        n_taps=2,
        sigma=0.5,
        mlp_ratio=2,
    )
    model = Classifier(cfg, 1, 3)
    with torch.no_grad():
        model.blocks[0].conv.delay.copy_(torch.tensor([[0.0, 6.7]] * 4))  # depth 8
        model.blocks[1].conv.delay.copy_(torch.tensor([[1.0, 11.2]] * 4))  # depth 12
    quant = {"default": {"bits": 2}, "targets": [{"roles": ["act.output"], "bits": 6}]}
    model, t = wrap(model, QuantConfig.model_validate(quant))
    fp = footprint(model, t, sum(p.numel() for p in model.parameters()))
    assert fp["buffer_bits"] == 4 * 8 * 6 + 4 * 12 * 1  # encoder codes (6 bits), then bits
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


def test_role_at_two_bits_has_at_most_four_values_per_scale_group():
    model = Classifier({**S4D, "n_layers": 1}, 1, 3)
    model, _ = wrap(
        model,
        QuantConfig.model_validate(
            {
                "default": {"bits": 8},
                "targets": [
                    {"roles": ["linear.weight"], "bits": 2, "granularity": "per_channel"},
                    {"roles": ["ssm.C"], "bits": 2},
                ],
            }
        ),
    )
    model.train()
    with calibration_mode(model):
        model(torch.randn(2, 5, 1), "recurrent")
    model.eval()
    linear = model.blocks[0].linear
    w = linear.q("weight", linear.weight)
    assert all(row.unique().numel() <= 4 for row in w)  # one scale per output channel
    assert w.unique().numel() > 4  # …and the channels do use different scales
    ssm = model.blocks[0].ssm
    C = torch.view_as_real(ssm.q("C", torch.view_as_complex(ssm.C)))
    assert C.unique().numel() <= 4  # per tensor: real and imaginary parts on one 2-bit grid
    assert not torch.equal(w, linear.weight)
