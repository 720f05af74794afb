"""Stage 0 (optional): DINO pretraining of a ViT backbone (student/teacher self-distillation).

Modules: :mod:`.settings` (every setting of a run), :mod:`.views` (where the images come from),
:mod:`.augment` (DINO multi-crop), :mod:`.model` (ViT + DINO head), :mod:`.losses`, :mod:`.loop`
(one training step, checkpoints, export, the loop). Checkpoints, schedules, EMA and seeding come
from :mod:`maskdistill.training`.

Every random draw of step ``s`` comes from generators seeded by ``(seed, s)``, and every schedule
is a function of ``s``: a run resumed from the checkpoint of step ``s`` continues exactly as the
uninterrupted run would have.

Views: a *view source* returns, for a step, two lists of images (H, W, 3) uint8 of the same
scenes; the first global crop of scene i comes from ``first[i]``, the second from ``second[i]``.
Plain DINO passes the same image twice; the demo passes two renderings of one scene (same
objects, different backgrounds), and an InfoNCE term ties the two renderings' CLS embeddings.
"""
