"""animate124.preprocess"""
