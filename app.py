"""bmteach's entry point: `streamlit run app.py`. One navigation over the pages in pages/, grouped as a teacher
thinks of them (Learn / Explore / Teach); each page lays itself out and calls bmteach (ui.setup_page first)."""
import streamlit as st

from bmteach import ui

pages = {section: [st.Page(f"pages/{p.file}", title=p.title, icon=p.icon, default=p.file == ui.HOME_PAGE)
                   for p in items]
         for section, items in ui.present_pages().items()}
st.navigation(pages, position="sidebar").run()
