"""Dense CRF refinement of a segmentation (pydensecrf2, the optional ``crf`` extra).

The reference's settings (docs/method.md, stage 5): unary -log(softmax probability); a Gaussian
kernel (sxy 1, compatibility 3) and a bilateral kernel (sxy 67, srgb 3, compatibility 4);
10 mean-field iterations; the label of each pixel is the argmax of the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskdistill.config import Settings

INSTALL = "pip install 'maskdistill[crf]' (or pip install pydensecrf2)"


@dataclass(frozen=True)
class CRFSettings(Settings):
    """The dense CRF's kernels and iterations (config ``segment.crf_<name>``)."""

    config_prefix = "crf_"

    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    iterations: int


def crf_available() -> bool:
    """Whether pydensecrf2 can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def dense_crf(image: np.ndarray, probabilities: np.ndarray, settings: CRFSettings) -> np.ndarray:
    """Refine per-pixel class probabilities with a fully connected CRF.

    Args:
        image: (H, W, 3) uint8, the image the probabilities belong to; its channel order sets
            the bilateral kernel's colour distances (stage 5 passes BGR, as the reference).
        probabilities: (C, H, W) float, summing to 1 over C (a softmax).
        settings: the kernels.

    Returns:
        (H, W) int64 labels 0..C-1.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as error:
        raise ImportError(f"the dense CRF needs pydensecrf2: {INSTALL}") from error
    classes, height, width = probabilities.shape
    if image.shape != (height, width, 3):
        raise ValueError(f"image {image.shape} does not fit probabilities {probabilities.shape}")
    crf = dcrf.DenseCRF2D(width, height, classes)
    probs = np.clip(probabilities.astype(np.float32), 1e-8, 1.0)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=settings.gaussian_sxy, compat=settings.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=settings.bilateral_sxy,
        srgb=settings.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=settings.bilateral_compat,
    )
    refined = np.array(crf.inference(settings.iterations)).reshape(classes, height, width)
    return refined.argmax(axis=0)
