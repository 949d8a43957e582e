"""Building the standard layout from a download: ``data fetch`` (fetch), the source folder or
zip (sources), the plan and verification behind ``data prepare`` (plan), and staging the
files with their manifests (placement).
"""
