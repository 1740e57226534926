"""What the loop keeps: state, dead letters, the history sink."""
