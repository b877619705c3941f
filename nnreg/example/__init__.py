"""The built-in example: a small Learn2Reg dataset made from the MNI152 2009a template that nilearn ships."""
