"""Synthetic brain MRI phantoms, and the ``data synth`` datasets made of them.

Each image is a procedural 2-D axial slice: head, scalp and skull rings, a thin
CSF rim, grey and white matter with sulci, deep grey nuclei, ventricles and the
interhemispheric fissure (:mod:`.anatomy`). A lesion is added by class
(:mod:`.lesions`). Pose, size, contrast (T1 post-contrast, T2 or FLAIR-like,
:mod:`.contrast`), bias field, Rician noise and blur are drawn per image,
independently of the class (:mod:`.render`), so the class cannot be read from
global image statistics. :mod:`.drawing` holds the smooth random fields and soft
masks they all paint with. :mod:`.writer` writes datasets of phantoms in the standard
layout; the phantom modules import core and each other only, and know nothing of files.
"""
