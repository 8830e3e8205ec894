"""What a run leaves behind: its folder, round log, summary and checkpoints."""
