"""Storage: file systems (local and s3://), run directories, sync and downloads."""
