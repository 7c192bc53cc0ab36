"""animate124.stages"""
