"""kohya <-> diffusers module names: SAI/LDM block tables, dot placement, unknown names."""

import pytest

from lorakit.formats.sd_keys import (
    SD1,
    SDXL,
    diffusers_to_sai,
    dotted,
    from_kohya,
    layout_from_config,
    sai_to_diffusers,
    te_alternatives,
    to_kohya,
)

# Names as they appear in real SDXL kohya files, with the diffusers module each one adapts.
SDXL_NAMES = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    "lora_unet_input_blocks_8_1_proj_in": "down_blocks.2.attentions.1.proj_in",
    "lora_unet_input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "lora_unet_input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "lora_unet_input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj": "mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj",
    "lora_unet_middle_block_2_emb_layers_1": "mid_block.resnets.1.time_emb_proj",
    "lora_unet_output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "lora_unet_output_blocks_5_1_transformer_blocks_1_attn1_to_out_0": "up_blocks.1.attentions.2.transformer_blocks.1.attn1.to_out.0",
    "lora_unet_output_blocks_8_0_out_layers_3": "up_blocks.2.resnets.2.conv2",
    "lora_unet_time_embed_0": "time_embedding.linear_1",
    "lora_unet_label_emb_0_2": "add_embedding.linear_2",
}


@pytest.mark.parametrize("kohya_name,path", SDXL_NAMES.items())
def test_sdxl_sai_names(kohya_name, path):
    assert from_kohya(kohya_name) == ("unet", path, "sai")
    assert to_kohya("unet", path, sai=True) == kohya_name


def test_sd1_layout_and_diffusers_style():
    assert sai_to_diffusers("input_blocks.1.1.proj_in", SD1) == "down_blocks.0.attentions.0.proj_in"
    assert sai_to_diffusers("output_blocks.11.1.proj_out", SD1) == "up_blocks.3.attentions.2.proj_out"
    assert sai_to_diffusers("output_blocks.2.1.conv", SD1) == "up_blocks.0.upsamplers.0.conv"  # no attention there
    name = "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0"
    assert from_kohya(name) == ("unet", "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0", "diffusers")
    assert from_kohya("lora_te_text_model_encoder_layers_11_self_attn_q_proj") == (
        "text_encoder", "text_model.encoder.layers.11.self_attn.q_proj", "")
    assert from_kohya("lora_te2_text_model_encoder_layers_0_mlp_fc2")[:2] == (
        "text_encoder_2", "text_model.encoder.layers.0.mlp.fc2")


def test_every_module_of_a_real_layout_round_trips():
    import torch
    from diffusers import UNet2DConditionModel
    config = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    layout = layout_from_config(unet.config)
    assert layout == SDXL
    names = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
             and n not in ("conv_in", "conv_out") or n in ("conv_in", "conv_out")]
    assert len(names) > 700
    for n in names:
        sai = diffusers_to_sai(n, layout)
        assert sai_to_diffusers(sai, layout) == n
        assert from_kohya("lora_unet_" + sai.replace(".", "_"), layout)[1] == n


def test_unknown_names_raise_with_the_name():
    with pytest.raises(KeyError, match="lora_vae_decoder"):
        from_kohya("lora_vae_decoder_conv")
    with pytest.raises(KeyError, match="input_blocks.99.1"):
        sai_to_diffusers("input_blocks.99.1.proj_in")
    with pytest.raises(KeyError, match="empty name component"):
        dotted("down_blocks__0")


def test_comfyui_lycoris_prefix():
    assert from_kohya("lycoris_down_blocks_0_attentions_0_proj_in")[:2] == ("unet", "down_blocks.0.attentions.0.proj_in")


def test_text_model_spellings():
    assert te_alternatives("text_model.encoder.layers.0.mlp.fc1") == [
        "text_model.encoder.layers.0.mlp.fc1", "encoder.layers.0.mlp.fc1"]
