"""animate124.cli"""
