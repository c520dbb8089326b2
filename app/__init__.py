"""Blossom's desktop node manager (PySide6). Until the desktop window lands, ``python -m app`` runs the demo."""
