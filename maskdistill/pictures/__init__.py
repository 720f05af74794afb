"""Pictures of a run (pure: arrays in, (H, W, 3) uint8 RGB arrays out; no file I/O).

:mod:`.drawing` draws panels (overlays, boxes, attention, legends) and stacks them into contact
sheets; :mod:`.sheets` chooses each stage's sample of images and columns; :mod:`.charts` plots
metrics and training curves with matplotlib. ``maskdistill visualize`` writes them as PNGs.
"""
