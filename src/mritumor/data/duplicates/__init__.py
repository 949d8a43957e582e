"""Exact and near duplicates: file and pixel fingerprints (hashing), the perceptual hash and
its pair search (perceptual), and the duplicate groups that prepare, check, kfold and finetune
share (groups).
"""
