"""Stage 4, select: each image's confident stage-3 predictions painted into one label map.

:mod:`.confident` is the per-image rule (pure, no file I/O).
"""
