"""VGG-16 SSD512: backbone + extra layers (vgg.py), per-level heads (head.py), the model (ssd.py)."""
