"""ichseg: intracranial hemorrhage segmentation in head CT (U-Net vs D-Unet)."""

__version__ = "0.1.0"
