"""The demo: FTP server, log writers and the whole stack on one machine."""
