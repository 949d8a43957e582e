"""Synthetic brain MRI phantoms: one procedural axial slice and its lesion mask, no files.

Each image is a procedural 2-D axial slice: head, scalp and skull rings, a thin
CSF rim, grey and white matter with sulci, deep grey nuclei, ventricles and the
interhemispheric fissure (:mod:`.anatomy`). A lesion is added by class
(:mod:`.lesions`). Pose, size, contrast (T1 post-contrast, T2 or FLAIR-like,
:mod:`.contrast`), bias field, Rician noise and blur are drawn per image,
independently of the class (:mod:`.render`), so the class cannot be read from
global image statistics. :mod:`.drawing` holds the smooth random fields and soft
masks they all paint with. Writing datasets of phantoms is :mod:`mritumor.data.synth`.

Imports core and its own modules only: phantoms know nothing of files or layouts.
"""
