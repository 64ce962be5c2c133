"""Per user × customer × group × event × channel preferences, and how they resolve."""
