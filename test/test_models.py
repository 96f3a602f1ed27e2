"""The six networks: shapes, exact parameter counts, paper MACs, attention semantics."""

import pytest
import torch
from torch import nn

from eacnet_core.evaluate.flops import module_macs, total_flops
from eacnet_core.models import MODELS, SelfCalibrationAttention, build_model, model_for

# The paper's Tables 1 and 3 (params to three decimals) and the exact counts of the reference code, 19 classes.
PARAMS_19 = {"erfnet": 2_066_642, "erfnet_enc": 1_876_495, "eacnet_erf": 1_877_636, "eacnet_erf_nl": 1_877_636,
             "dabnet": 756_643, "eacnet_dab": 757_784}
PAPER_GMACS_512x1024 = {"erfnet": 30.055, "erfnet_enc": 21.698, "eacnet_erf": 21.702, "eacnet_erf_nl": 21.707,
                        "dabnet": 10.375, "eacnet_dab": 10.380}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_matches_paper(name):
    assert n_params(build_model(name, 19)) == PARAMS_19[name]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("classes,size", [(19, (32, 64)), (11, (24, 40)), (3, (37, 53)), (1, (8, 8))])
def test_forward_returns_logits_at_input_resolution(name, classes, size):
    model = build_model(name, classes).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, classes, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_module_macs_within_a_tenth_of_a_percent_of_paper(name):
    """The README's claim: the paper's MACs to 0.1% (measured: within 0.008%)."""
    gmacs = module_macs(build_model(name, 19), 512, 1024) / 1e9
    assert gmacs == pytest.approx(PAPER_GMACS_512x1024[name], rel=1e-3)


def test_total_flops_count_the_attention_products():
    enc, eac, nl = (total_flops(build_model(n, 19), 64, 128) for n in ("erfnet_enc", "eacnet_erf", "eacnet_erf_nl"))
    # EAC: energy + output products on an 8x16 map with 4x16 pooled keys: 2 * (128 * 32 * 19) MACs.
    assert eac - enc == pytest.approx(2 * 2 * 128 * 32 * 19 + 2 * (128 + 2 * 32) * 19 * 19, rel=0.01)
    assert nl - enc > eac - enc  # no pooling: four times the keys


@pytest.mark.parametrize("eac,backbone", [("eacnet_erf", "erfnet_enc"), ("eacnet_erf_nl", "erfnet_enc"),
                                          ("eacnet_dab", "dabnet")])
def test_eacnet_with_gamma_zero_equals_its_backbone(eac, backbone):
    torch.manual_seed(0)
    model = build_model(eac, 11).eval()
    assert model.attention.gamma.item() == 0.0  # the paper's initialisation
    base = build_model(backbone, 11).eval()
    base.load_state_dict(model.backbone.state_dict())
    x = torch.randn(1, 3, 40, 56)
    with torch.inference_mode():
        assert torch.equal(model(x), base(x))


def test_attention_weights_sum_to_one_over_keys():
    torch.manual_seed(0)
    attn = SelfCalibrationAttention(5, pool=2)
    weights = attn.attention_map(torch.randn(2, 5, 6, 10))
    assert weights.shape == (2, 60, 15)  # N queries x N/4 pooled keys
    assert torch.allclose(weights.sum(-1), torch.ones(2, 60), atol=1e-6)
    assert (weights >= 0).all()


def paper_attention(x: torch.Tensor, weights: dict[str, torch.Tensor], gamma: float, pool: int) -> torch.Tensor:
    """The self-calibration attention written out from the paper, sharing nothing with the
    module but its parameters: queries from every pixel, keys and values from the input
    max-pooled over pool x pool windows (N' = N / pool^2), energy q k^T unscaled, softmax over
    the keys, y = gamma * (attention @ values) + x. 1x1 convs are matrix products."""
    b, c, h, w = x.shape
    pooled = x.reshape(b, c, h // pool, pool, w // pool, pool).amax(dim=(3, 5))

    def conv1x1(name: str, t: torch.Tensor) -> torch.Tensor:  # (B, C, ...) -> (B, positions, C)
        flat = t.reshape(b, c, -1)
        return torch.einsum("oc,bcn->bno", weights[f"{name}.weight"][:, :, 0, 0], flat) + weights[f"{name}.bias"]

    q, k, v = conv1x1("query", x), conv1x1("key", pooled), conv1x1("value", pooled)
    energy = torch.einsum("bnc,bmc->bnm", q, k)
    out = torch.einsum("bnm,bmc->bnc", torch.softmax(energy.double(), dim=-1).float(), v)
    return gamma * out.permute(0, 2, 1).reshape(b, c, h, w) + x


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_attention_equals_the_papers_definition(pool):
    torch.manual_seed(0)
    attn = SelfCalibrationAttention(7, pool=pool)
    attn.gamma.data.fill_(0.7)
    attn.block_elements = 64  # force several query blocks
    x = torch.randn(2, 7, 16, 12) * 4
    reference = paper_attention(x, attn.state_dict(), 0.7, pool)
    with torch.inference_mode():
        assert torch.allclose(attn(x), reference, atol=1e-4)


def test_the_reference_tells_pooling_keys_apart_from_pooling_their_projection():
    """Pool-then-project and project-then-pool differ (max does not commute with a linear map
    with negative weights), so the test above would catch a module doing it the other way."""
    torch.manual_seed(0)
    attn = SelfCalibrationAttention(7, pool=2)
    attn.gamma.data.fill_(0.7)
    x = torch.randn(2, 7, 16, 12) * 4
    swapped = nn.MaxPool2d(2)
    with torch.inference_mode():
        q = attn.query(x).flatten(2).transpose(1, 2)
        k = swapped(attn.key(x)).flatten(2).transpose(1, 2)
        v = swapped(attn.value(x)).flatten(2).transpose(1, 2)
        wrong = 0.7 * (torch.softmax(q @ k.transpose(1, 2), -1) @ v).transpose(1, 2).reshape(x.shape) + x
    assert not torch.allclose(wrong, paper_attention(x, attn.state_dict(), 0.7, 2), atol=1e-2)


def test_attention_trains_gamma():
    attn = SelfCalibrationAttention(3)
    attn(torch.randn(1, 3, 8, 8)).sum().backward()
    assert attn.gamma.grad is not None and attn.gamma.grad.abs().item() > 0


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="known models: erfnet"):
        build_model("segformer")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("erfnet", 0)
    with pytest.raises(ValueError, match="erfnet\\+eac"):
        model_for("dabnet", "nonlocal")
    assert model_for("erfnet", "eac") == "eacnet_erf"
    assert model_for("dabnet", "none") == "dabnet"


def test_pool_factor_is_an_argument():
    model = build_model("eacnet_erf", 19, pool=4)
    assert model.attention.pool_size == 4
    assert module_macs(model, 64, 128) < module_macs(build_model("eacnet_erf", 19), 64, 128)
