"""Slide access, tiling, SAM loading and proposals: plain Python with no Django imports."""
