"""The four tumour classes of the Kaggle brain-MRI sets, in the order of a model's outputs.

They sit on the ground floor because the settings take their default class list from
here, and the settings may not import the data package above them.
"""

CLASS_NAMES = ("glioma", "meningioma", "no_tumor", "pituitary")
