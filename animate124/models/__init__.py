"""animate124.models"""
