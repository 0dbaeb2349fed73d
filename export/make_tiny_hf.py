"""Write a small random-initialised Hugging Face ResNet to export/tiny-hf-resnet (offline).

    python export/make_tiny_hf.py && edgecoe export export/hf-example.yaml -o models/hf-example
"""

from pathlib import Path

from transformers import ResNetConfig, ResNetForImageClassification

out = Path(__file__).parent / "tiny-hf-resnet"
config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_labels=2)
ResNetForImageClassification(config).save_pretrained(out)
print(f"wrote {out}")
