"""Tiny, randomly initialised stand-ins of the real checkpoints, built offline from configs and
saved in the real file formats and layouts, so the real loading code is what the tests run."""
from __future__ import annotations

from pathlib import Path

from eam.architectures import CHARS, clip_tokenizer


def bert_tokenizer(directory, max_length: int = 35):
    """A BertTokenizer with a character-level WordPiece vocabulary, saved to `directory`."""
    from transformers import BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(CHARS) + ["##" + c for c in CHARS]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(directory / "vocab.txt"), model_max_length=max_length)
    tok.save_pretrained(directory)
    return tok


def clip_model(directory, image_size: int = 32, projection_dim: int = 16, seed: int = 0):
    """A tiny transformers CLIPModel + CLIPProcessor saved with `save_pretrained` to `directory`
    (the layout of an openai/laion CLIP snapshot)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = Path(directory)
    tok = clip_tokenizer(directory / "_tok", max_length=16)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim)
    model = CLIPModel(config).eval()
    model.save_pretrained(directory)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                                 crop_size={"height": image_size, "width": image_size}),
                              tokenizer=tok)
    processor.save_pretrained(directory)
    return model, processor
