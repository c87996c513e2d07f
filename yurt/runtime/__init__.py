"""yurt.runtime"""
