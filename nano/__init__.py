"""gpt-oss-nano: the corpus, training and evaluation of the tiny model shipped in gptoss_lab/models/nano."""
