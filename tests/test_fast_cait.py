"""The fused rewrite of CaiT's talking-heads attention is exact, and the teacher wrapper uses it only where valid."""
import pytest
import timm
import torch
from timm.models.cait import TalkingHeadAttn

from vitkd_zoo.distill import FrozenTeacher
from vitkd_zoo.distill.fast_cait import FusedTalkingHeadAttn, use_fused_talking_heads

CAIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, depth_token_only=1, num_classes=10)


def _randomise(module, std=0.3):
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)
    return module


@pytest.mark.parametrize("heads,tokens,width", [(4, 50, 64), (8, 197, 384)])
def test_fused_layer_equals_timm_talking_heads_in_fp32(heads, tokens, width):
    layer = _randomise(TalkingHeadAttn(width, num_heads=heads, qkv_bias=True)).eval()
    x = torch.randn(2, tokens, width)
    with torch.no_grad():
        reference, fused = layer(x), FusedTalkingHeadAttn(layer)(x)
    relative = ((fused - reference).abs().max() / reference.abs().max()).item()
    assert relative <= 1e-5, relative


def test_swapping_a_whole_cait_keeps_its_logits_and_features():
    model = _randomise(timm.create_model("cait_xxs24_224", **CAIT), std=0.2).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, features = model(x), model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        assert use_fused_talking_heads(model) == 2
        assert all(isinstance(b.attn, FusedTalkingHeadAttn) for b in model.blocks)
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], features,
                                   rtol=1e-5, atol=1e-5)


def test_refused_where_invalid_and_a_no_op_for_other_models():
    training = timm.create_model("cait_xxs24_224", attn_drop_rate=0.1, **CAIT).train()
    with pytest.raises(ValueError, match="eval mode"):
        use_fused_talking_heads(training)
    assert use_fused_talking_heads(timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8)) == 0


def test_teacher_wrapper_keeps_the_plain_path_on_cpu_and_fuses_when_asked():
    auto = FrozenTeacher(timm.create_model("cait_xxs24_224", **CAIT), with_feature=True).to("cpu")
    assert auto.fused_layers == 0 and isinstance(auto.model.blocks[0].attn, TalkingHeadAttn)
    model = _randomise(timm.create_model("cait_xxs24_224", **CAIT), std=0.2)
    plain = FrozenTeacher(model, with_feature=True)
    x = torch.randn(2, 3, 32, 32)
    ref_logits, ref_feature = plain(x)
    forced = FrozenTeacher(model, with_feature=True, fused_attention=True)
    assert forced.fused_layers == 2
    logits, feature = forced(x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feature, ref_feature, rtol=1e-5, atol=1e-5)
    vit = FrozenTeacher(timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8), fused_attention=True)
    assert vit.fused_layers == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (bf16 check of the fused path)")
def test_fused_layer_in_bf16_on_gpu():
    layer = _randomise(TalkingHeadAttn(384, num_heads=8, qkv_bias=True)).eval().cuda()
    x = torch.randn(8, 197, 384, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference, fused = layer(x).float(), FusedTalkingHeadAttn(layer)(x).float()
    assert ((fused - reference).abs().max() / reference.abs().max()).item() <= 1e-2
    auto = FrozenTeacher(timm.create_model("cait_xxs24_224", **CAIT)).to("cuda")
    assert auto.fused_layers == 2
