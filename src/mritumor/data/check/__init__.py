"""``data check``: the analysis (unreadable files, duplicates, label conflicts, leakage,
balance), its JSON and CSV report, and the quarantine behind ``--fix``.
"""
