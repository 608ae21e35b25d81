"""nnU-Net v2 interop: export a sweep's prepared slices as an nnU-Net raw dataset with ichseg's
folds, and import nnU-Net's predictions back as a third architecture of the same sweep."""
