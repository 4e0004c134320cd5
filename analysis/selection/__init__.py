"""What to train and what it costs, shared by the LM adaptation and the vision edge stages."""
