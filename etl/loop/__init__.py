"""The tick loop: runners, what runs on workers, its metrics."""
