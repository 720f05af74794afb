"""Network loading: ViT backbones (:mod:`.vit`), ResNet backbones (:mod:`.resnet`), the
normalisation each weight source expects (:mod:`.norm`), Mask R-CNN and DeepLab-v3 builders."""
