"""One bundle, any runtime: the Predictor and what it stands on (runtimes, variants, test-time
augmentation, embeddings). Below every consumer — classify, compress, evaluate, explain,
bench, serve — so none of them imports another to predict."""
