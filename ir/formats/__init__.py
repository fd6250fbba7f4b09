"""Format families. Each module registers its named formats and its codec on import."""
