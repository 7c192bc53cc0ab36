"""animate124.render"""
