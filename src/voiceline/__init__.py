"""voiceline: AI voice agents on real phone lines through Asterisk."""

__version__ = "0.1.0"
