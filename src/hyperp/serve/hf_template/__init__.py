"""The files ``hyperp export`` copies into a Hugging Face directory whose architecture has no
stock ``transformers`` equivalent; loaded with ``trust_remote_code=True``. They import only
torch and transformers, never hyperp."""
