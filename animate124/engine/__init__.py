"""animate124.engine"""
