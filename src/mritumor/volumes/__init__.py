"""3-D scans: NIfTI volumes and DICOM series, turned into the 2-D slices the classifier reads.

:mod:`.reading` loads a volume (nibabel for NIfTI, pydicom for a folder holding one
DICOM series) into one canonical orientation (RAS+); :mod:`.slicing` cuts it along
an anatomical axis into display-oriented 8-bit slices, windowed, with blank slices
found and counted; :mod:`.verdict` turns slice tumour scores into one volume score.
:mod:`.prepare` extracts the slices of labelled volumes into the standard layout,
keeping each case in one split.

This room sits beside ``data`` and may import ``core`` and ``data`` only; it is pure
NumPy (and SciPy for resampling). nibabel and pydicom come with the ``volumes`` extra
(``pip install 'mritumor[volumes]'``) and are imported only when a volume is read.
"""
