"""Everything about getting images and their labels or parameters in."""
