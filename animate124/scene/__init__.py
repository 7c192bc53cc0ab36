"""animate124.scene"""
