"""Build the small sentiment model served from model-settings/sentiment.

Nothing is downloaded: a word-level tokenizer is trained on the sentences
below, and a two-layer BERT is trained on them for a few seconds. It is a
real transformers text-classification model, small enough to build at set-up.
Usage: python examples/sentiment/train.py [OUT_DIR]
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("USE_TF", "0")  # transformers would otherwise import TensorFlow

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]

POSITIVE = [
    "i love this product",
    "what a great movie",
    "the service was excellent",
    "this is wonderful news",
    "absolutely fantastic experience",
    "i am very happy with it",
    "the food was delicious",
    "best purchase i have made",
    "a truly great day",
    "i really like the design",
    "highly recommended and good value",
    "it works perfectly",
]
NEGATIVE = [
    "i hate this product",
    "what a terrible movie",
    "the service was awful",
    "this is horrible news",
    "absolutely dreadful experience",
    "i am very unhappy with it",
    "the food was disgusting",
    "worst purchase i have made",
    "a truly bad day",
    "i really dislike the design",
    "not recommended and poor value",
    "it is broken and useless",
]
LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(POSITIVE + NEGATIVE, trainers.WordLevelTrainer(special_tokens=special))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def train(out_dir: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    model = BertForSequenceClassification(config)
    texts = POSITIVE + NEGATIVE
    labels = torch.tensor([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(60):
        optimiser.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimiser.step()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "model-settings" / "sentiment"
    print(f"wrote {train(out)}")
