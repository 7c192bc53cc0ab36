"""animate124.config"""
