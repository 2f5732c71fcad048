"""DreaMS pre-training as a vqax task (issue 23): spectra data, the program, commands and evaluation."""
