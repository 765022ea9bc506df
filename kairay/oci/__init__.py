"""OCI images in Kaito's layout (adapters and datasets under `/data`): push, pull, unpack, check.

Used by tuning (push the trained adapter, pull data images) and serving (pull adapter images).
"""
