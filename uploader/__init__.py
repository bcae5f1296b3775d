"""uploader: resumable file upload and processing service."""

__version__ = "0.1.0"
