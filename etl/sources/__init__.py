"""Sources: tail a growing file, locally or over FTP/FTPS, through rotations."""
